"""The lab: everything beside the paper's method (see the README's reading order)."""
