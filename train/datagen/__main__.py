import sys

from train.datagen.cli import main

sys.exit(main())
