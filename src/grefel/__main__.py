from grefel.cli import main

raise SystemExit(main())
