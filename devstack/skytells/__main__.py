from devstack.skytells.app import main

main()
