chmod 0755 run.sh
chmod 0640 dir/sub/two
chmod 0750 dir/sub
