from dbaccess.broker.entry import broker_main

broker_main()
