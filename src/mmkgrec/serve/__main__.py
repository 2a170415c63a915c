"""``python -m mmkgrec.serve serve RUN_DIR ...`` / ``export-feedback DB --out FILE``."""

from mmkgrec.serve.cli import main

main()
