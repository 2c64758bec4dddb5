"""Reference math (pure PyTorch) and backend dispatch for the attention ops."""
