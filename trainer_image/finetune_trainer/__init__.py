"""The trainer image: data validation, training and evaluation of one FineTuneJob run.

Reads the trainer contract (`finetune_api.trainer_config`, one type per command), reports through the
run layout (`finetune_api.run_layout`). Imports finetune_api, torch and the Hugging Face stack; never kopf
or the operator.
"""
