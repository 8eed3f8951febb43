"""``python -m msma.data.synthetic --grid PNG | --speed N``."""

from msma.data.synthetic.preview import main

if __name__ == "__main__":
    raise SystemExit(main())
