"""The hybrid model: head plans, conversion, hybrid attention, cache and export. No Lightning here."""
