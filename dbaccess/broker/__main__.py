from dbaccess.entry import broker_main

broker_main()
