/* The OS types lwIP's headers need with NO_SYS=0 (nothing here runs). */
typedef int sys_sem_t;
typedef int sys_mutex_t;
typedef int sys_mbox_t;
typedef int sys_thread_t;
