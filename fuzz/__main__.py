from tripwire.fuzz.cli import main

raise SystemExit(main())
