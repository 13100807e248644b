from services.webhook.app import main

main()
