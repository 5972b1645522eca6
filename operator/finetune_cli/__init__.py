"""The `finetune` command line: offline manifest validation now; the operator and local runs dispatch from
here too. Imports the API; imports the operator or trainer only inside the subcommand that needs them."""
