from dbaccess.cli import main

main()
