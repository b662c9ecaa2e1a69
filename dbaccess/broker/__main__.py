from dbaccess.broker.cli import main

main()
