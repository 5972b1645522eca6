"""`finetune` — command line entry point."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from finetune_cli import validate


def _validate(args: argparse.Namespace) -> int:
    failed = 0
    checked = 0
    for path in validate.expand(args.files):
        try:
            text = sys.stdin.read() if str(path) == "-" else path.read_text()
        except OSError as err:
            print(f"{path}: cannot read: {err.strerror}", file=sys.stderr)
            failed += 1
            continue
        for result in validate.validate_text(text, str(path)):
            checked += 1
            if result.problems:
                failed += 1
                for problem in result.problems:
                    print(f"{result.label}: {problem}", file=sys.stderr)
            elif not args.quiet:
                print(f"{result.label}: valid")
    if failed:
        print(f"{failed} of {checked} manifests invalid", file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="finetune", description="finetune-operator command line")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser(
        "validate",
        help="check FineTuneJob/EvalGate manifests offline",
        description="Check manifests against the API models, the generated CRD schema and its CEL rules. "
        "Prints every problem with its field path; exits 1 if any manifest is invalid.",
    )
    p.add_argument("files", nargs="+", metavar="FILE", help="YAML files or directories ('-' for stdin)")
    p.add_argument("-q", "--quiet", action="store_true", help="print problems only")
    p.set_defaults(func=_validate)
    r = sub.add_parser(
        "run",
        help="run a FineTuneJob manifest on this machine, without a cluster",
        description="Data gates, training (with a progress bar) and holdout scores, as in a cluster, with a "
        "local folder in place of S3. An unchanged manifest resumes its run.",
    )
    r.add_argument("file", type=Path, metavar="FILE", help="a YAML file with one FineTuneJob")
    r.add_argument("--workdir", type=Path, default=Path("finetune-runs"), help="where runs are kept")
    r.add_argument("--fresh", action="store_true", help="start the run over instead of resuming it")
    r.add_argument(
        "--output", type=Path, default=None, help="where a model that passes its EvalGate is published"
    )
    r.add_argument(
        "--approve", metavar="NAME", default=None, help="approve the promotion when the gate requires it"
    )
    r.set_defaults(func=_run)
    op = sub.add_parser("operator", help="run the Kubernetes operator", add_help=False)
    op.add_argument("args", nargs=argparse.REMAINDER)
    op.set_defaults(func=_operator)
    return parser


def _run(args: argparse.Namespace) -> int:
    from finetune_cli import run  # noqa: PLC0415

    return run.main(args.file, args.workdir, fresh=args.fresh, output=args.output, approve=args.approve)


def _operator(args: argparse.Namespace) -> int:
    from finetune_operator.__main__ import main as operator_main  # noqa: PLC0415 - kopf only when asked

    return operator_main(args.args)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
