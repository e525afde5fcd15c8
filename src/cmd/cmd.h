/* Subcommands of the tern CLI: one file each under src/cmd/. */
#ifndef TERN_CMD_CMD_H
#define TERN_CMD_CMD_H

/* Each returns the process exit status. argv[0] is the subcommand name. */
int cmd_run(int argc, char **argv);
int cmd_img(int argc, char **argv);
int cmd_ctl(int argc, char **argv);
int cmd_snapshot(int argc, char **argv);
int cmd_restore(int argc, char **argv);
int cmd_clone(int argc, char **argv);
int cmd_nbd_serve(int argc, char **argv);
int cmd_volume(int argc, char **argv);
int cmd_replicate(int argc, char **argv);
/* tern img stress (img_stress.c): the crash-safety writer and its checker. */
int img_stress(int argc, char **argv);

#endif
