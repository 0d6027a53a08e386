"""The bug zoo: deliberately broken setups and the finding the debug stage must rank first."""
