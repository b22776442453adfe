from lingo.cli import main

raise SystemExit(main())
