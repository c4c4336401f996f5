from sendwarden.cli import main

raise SystemExit(main())
