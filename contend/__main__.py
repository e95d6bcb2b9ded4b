from contend.cli import main

main()
