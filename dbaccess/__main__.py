from dbaccess.entry import main

main()
