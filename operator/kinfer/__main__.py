from kinfer.cli import main

main()
