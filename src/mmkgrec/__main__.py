from mmkgrec.cli import main

main()
