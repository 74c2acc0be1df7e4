from reqcheck.cli import main

main()
