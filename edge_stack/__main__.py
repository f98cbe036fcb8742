from edge_stack._entry import main

main()
