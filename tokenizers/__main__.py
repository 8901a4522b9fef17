from tok.cli import main

raise SystemExit(main())
