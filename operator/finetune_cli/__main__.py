import sys

from finetune_cli.main import main

sys.exit(main())
