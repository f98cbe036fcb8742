from edge_stack.cli import main

main()
