"""`python -m compiler ...` runs the compile command standalone."""

from compiler.cli import main

if __name__ == "__main__":
    main()
