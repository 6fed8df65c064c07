from grefel.commands import main

raise SystemExit(main())
