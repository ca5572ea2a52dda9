from coati_tui.entry import main

main()
