"""HydraHead command line: `python main.py fit --config configs/demo/stage1.yaml`, `python main.py demo`."""

from hydrahead_lit.cli import main

if __name__ == "__main__":
    main()
