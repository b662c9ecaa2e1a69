from dbaccess.cli.entry import main

main()
