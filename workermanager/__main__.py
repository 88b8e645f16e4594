from workermanager.cli import main

raise SystemExit(main())
