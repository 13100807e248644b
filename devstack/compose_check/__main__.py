from devstack.compose_check.run import main

main()
