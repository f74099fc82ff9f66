ln -s f.txt link.txt
ln -s ../f.txt dir/link-in-dir
chmod 0600 h.md
