{
  "targets": [
    {
      "target_name": "wal_crc",
      "sources": ["wal_crc.c"],
      "cflags": ["-O2", "-std=c11", "-Wall", "-Wextra"]
    },
    {
      "target_name": "fs_calls",
      "sources": ["fs_calls.c"],
      "cflags": ["-O2", "-std=c11", "-Wall", "-Wextra"]
    }
  ]
}
