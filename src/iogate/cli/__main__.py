from iogate.cli import main

main()
