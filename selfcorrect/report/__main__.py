"""`python -m selfcorrect.report COMPARE_DIR`: (re)write the report of a comparison folder."""

import sys

from ..cli import one_line
from .render import write_report

PROG = "python -m selfcorrect.report"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0].startswith("-"):
        print(f"usage: {PROG} COMPARE_DIR", file=sys.stderr)
        return 2
    try:
        md_path, html_path = write_report(args[0])
    except OSError as exc:  # a missing folder, or one the report cannot be written into: bad input, not a bug
        print(f"{PROG}: error: {one_line(exc)}", file=sys.stderr)
        return 2
    print(f"wrote {md_path}\nwrote {html_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
