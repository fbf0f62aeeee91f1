import sys

from train.eval.cli import main

sys.exit(main())
