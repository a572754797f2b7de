"""One module per benchmark; importing the package (qwenvl.eval.registry does) registers them all.
Adding a task = adding a module here with a @register-ed Task subclass."""
