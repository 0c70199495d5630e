"""Placeholder; replaced below."""
def main(args=None):
    raise SystemExit("not yet")
