"""The trainer image's entry point: `python -m finetune_trainer COMMAND --config /etc/finetune/trainer.json`.

Commands: `serve` (the model server of a ModelDeployment: `finetune_trainer.serve`), `validate-data` (the
data gates; CPU), `train` (one run of the method, resumable),
`score-holdout` (the holdout metric, of the base model or the newest checkpoint), `evaluate` (the
EvalGate's suites, of the candidate checkpoint and the baseline) and `promote` (publish what passed). The
contract file is the operator's ConfigMap (or the downward-API annotation for validation) or, locally, what
`finetune run` writes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pydantic import ValidationError

from finetune_api.trainer_config import (
    CONFIG_PATH,
    EvaluateContract,
    PromoteContract,
    RunContract,
    TrainContract,
    ValidateContract,
)

# The contract each command reads (finetune_api.trainer_config): one type per command.
CONTRACTS: dict[str, type[RunContract]] = {
    "validate-data": ValidateContract,
    "train": TrainContract,
    "score-holdout": TrainContract,
    "evaluate": EvaluateContract,
    "promote": PromoteContract,
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:  # the model server reads its own contract (finetune_api.serving)
        from finetune_trainer import serve  # noqa: PLC0415

        return serve.main(argv[1:])
    parser = argparse.ArgumentParser(prog="finetune_trainer")
    parser.add_argument("command", choices=list(CONTRACTS))
    parser.add_argument("--config", type=Path, default=Path(CONFIG_PATH))
    parser.add_argument("--workdir", type=Path, default=None, help="local scratch (default /scratch/run)")
    parser.add_argument(
        "--checkpoint",
        choices=["base", "latest"],
        default="latest",
        help="score-holdout: which model to score",
    )
    args = parser.parse_args(argv)
    try:
        config = CONTRACTS[args.command].model_validate_json(args.config.read_text())
    except (OSError, ValidationError) as err:
        print(f"cannot read the {args.command} contract {args.config}: {err}", file=sys.stderr)
        return 2
    if isinstance(config, PromoteContract):
        from finetune_trainer import promote  # noqa: PLC0415

        return promote.main(config)
    if isinstance(config, EvaluateContract):
        from finetune_trainer import train  # noqa: PLC0415
        from finetune_trainer.evaluation import suites  # noqa: PLC0415

        return suites.main(config, train.workdir(args.workdir))
    if isinstance(config, TrainContract):
        from finetune_trainer import train  # noqa: PLC0415 (the heavy imports only for the command run)

        if args.command == "score-holdout":
            from finetune_trainer.evaluation import task  # noqa: PLC0415

            return task.main(config, args.checkpoint, train.workdir(args.workdir))
        return train.main(config, args.workdir)
    from finetune_trainer import validate  # noqa: PLC0415

    return validate.main(config)


if __name__ == "__main__":
    sys.exit(main())
