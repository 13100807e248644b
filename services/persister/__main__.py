from services.persister.app import main

main()
