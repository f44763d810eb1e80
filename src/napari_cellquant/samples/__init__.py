"""Sample data shipped with the plugin (a package so that wheels include its files)."""
