"""`python -m selfcorrect.report COMPARE_DIR`: (re)write the report of a comparison folder."""

import sys

from .render import write_report


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0].startswith("-"):
        print("usage: python -m selfcorrect.report COMPARE_DIR", file=sys.stderr)
        return 2
    md_path, html_path = write_report(args[0])
    print(f"wrote {md_path}\nwrote {html_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
