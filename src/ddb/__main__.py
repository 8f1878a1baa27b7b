from ddb.cli import main

raise SystemExit(main())
