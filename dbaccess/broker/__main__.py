from dbaccess.cli.entry import broker_main

broker_main()
