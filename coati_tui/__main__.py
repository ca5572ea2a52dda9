from coati_tui.cli import main

main()
