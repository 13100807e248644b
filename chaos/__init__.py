"""The fault soak behind `make chaos`: many users, the simulator's directives, faults on a seeded schedule."""
