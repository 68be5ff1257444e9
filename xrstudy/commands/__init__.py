"""The `xrstudy` command handlers: each takes the parsed arguments, calls the library with plain values
and prints what the user asked for. The parser is `xrstudy.cli`, which names a handler as
`xrstudy.commands.<group>:cmd_<name>` and imports its module only when that command runs. Nothing else
in the package prints or reads an `argparse.Namespace`."""
