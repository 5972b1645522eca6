"""The trainer image's entry point: `python -m finetune_trainer COMMAND --config /etc/finetune/trainer.json`.

Commands: `validate-data` (the data gates; CPU). The contract file is the operator's ConfigMap (or the
downward-API annotation for validation) or, locally, what `finetune run` writes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pydantic import ValidationError

from finetune_api.trainer_config import CONFIG_PATH, TrainerConfig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="finetune_trainer")
    parser.add_argument("command", choices=["validate-data"])
    parser.add_argument("--config", type=Path, default=Path(CONFIG_PATH))
    args = parser.parse_args(argv)
    try:
        config = TrainerConfig.model_validate_json(args.config.read_text())
    except (OSError, ValidationError) as err:
        print(f"cannot read the trainer contract {args.config}: {err}", file=sys.stderr)
        return 2
    from finetune_trainer import validate  # noqa: PLC0415 (the heavy imports only for the command run)

    return validate.main(config)


if __name__ == "__main__":
    sys.exit(main())
